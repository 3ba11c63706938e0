//! `kube-vip-webhook plan`: what each Service would get, offline, through the same engine.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Instant;

use serde::Serialize;

use crate::config::Config;
use crate::engine::{Options, Outcome};
use crate::files::{self, FileError};
use crate::pools::PoolObjects;
use crate::reserved::Network;
use crate::service::SvcInfo;
use crate::state::{Allocator, Confirm, Request};

mod reserved;
pub use reserved::{Reserved, reserved, reserved_table};

pub struct PlanInput {
    pub configmap: PathBuf,
    pub services: Vec<PathBuf>,
    pub requests: Vec<PathBuf>,
    /// VIPPool objects (`--pools`).
    pub pools: Vec<PathBuf>,
    pub options: Options,
    /// Nodes (and the API endpoint's objects) whose addresses are never handed out.
    pub nodes: Vec<PathBuf>,
    pub exclude: Option<crate::config::Exclusion>,
}

#[derive(Debug, Serialize)]
pub struct PlanResult {
    pub namespace: String,
    pub name: String,
    /// allocated | shared | requested | skipped | denied | no_address
    pub outcome: &'static str,
    pub ips: Vec<String>,
    pub annotations: BTreeMap<String, String>,
    pub labels: BTreeMap<String, String>,
    pub warnings: Vec<String>,
    pub error: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct PoolUsage {
    pub key: String,
    pub family: &'static str,
    pub size: u128,
    pub used: u128,
    pub free: u128,
}

#[derive(Debug, Serialize)]
pub struct Plan {
    pub results: Vec<PlanResult>,
    pub pools: Vec<PoolUsage>,
    pub config_errors: Vec<String>,
    /// Addresses never handed out, and why.
    pub reserved: Reserved,
}

/// Decide every request in order (each result counts as used for the next). Without requests,
/// decide every handled LoadBalancer Service of the cluster files that has no address yet.
pub fn run(input: &PlanInput) -> Result<Plan, FileError> {
    let config = Config::from_data(&files::load_configmap_data(&input.configmap)?);
    let existing = files::load_svc_infos(&input.services)?;
    let requests = if input.requests.is_empty() {
        None
    } else {
        Some(files::load_svc_infos(&input.requests)?)
    };
    let network = Network {
        sources: files::load_network(&input.nodes)?,
        exclude: input.exclude.clone(),
    };
    let objects = PoolObjects {
        pools: files::load_pools(&input.pools)?,
        // Files carry no Namespaces: selectors on namespace labels match by name only.
        namespaces: Vec::new(),
    };
    Ok(decide_all(
        Some(config),
        &input.configmap.display().to_string(),
        &existing,
        requests,
        &input.options,
        &network,
        &objects,
    ))
}

/// [`run`] on data already read (files, or a live cluster): `config` `None` when the ConfigMap
/// does not exist; `requests` `None` for "every Service still waiting for an address".
pub fn decide_all(
    config: Option<Config>,
    config_name: &str,
    existing: &[SvcInfo],
    requests: Option<Vec<SvcInfo>>,
    options: &Options,
    network: &Network,
    objects: &PoolObjects,
) -> Plan {
    let mut config_errors: Vec<String> = config
        .as_ref()
        .map(|c| c.errors().iter().map(ToString::to_string).collect())
        .unwrap_or_default();
    if config.is_none() {
        config_errors.push(format!("ConfigMap {config_name} does not exist"));
    }
    let allocator =
        Allocator::new(options.clone(), Confirm::OnAdmit, config_name).with_network(network);
    allocator.set_config(config);
    allocator.load_objects(objects);
    config_errors.extend(PoolObjects::errors(&allocator.pools()));
    allocator.reset_services(existing);
    let requests = requests.unwrap_or_else(|| {
        existing
            .iter()
            .filter(|s| allocator.needs_allocation(s))
            .cloned()
            .collect()
    });

    let now = Instant::now();
    let mut results = Vec::with_capacity(requests.len());
    for (i, svc) in requests.iter().enumerate() {
        let id = format!("plan-{i}");
        let d = allocator.admit(
            Request {
                id: &id,
                svc,
                old: None,
                dry_run: false,
            },
            now,
        );
        let error = match &d.outcome {
            Outcome::Denied(why) | Outcome::NoAddress(why) => Some(why.clone()),
            Outcome::Skipped(why) => Some(format!("skipped: {why}")),
            _ => None,
        };
        results.push(PlanResult {
            namespace: svc.namespace.clone(),
            name: if svc.name.is_empty() {
                svc.generate_name.clone().unwrap_or_default()
            } else {
                svc.name.clone()
            },
            outcome: d.outcome.label(),
            ips: d.outcome.ips().iter().map(ToString::to_string).collect(),
            annotations: d.changes.annotations,
            labels: d.changes.labels,
            warnings: d.warnings,
            error,
        });
    }
    let pools = pool_usage(&allocator);
    Plan {
        results,
        pools,
        config_errors,
        reserved: reserved(&allocator),
    }
}

/// Size, used and free of every pool and family, as the allocator sees them.
pub fn pool_usage(allocator: &Allocator) -> Vec<PoolUsage> {
    allocator
        .pool_stats()
        .into_iter()
        .map(|p| PoolUsage {
            key: p.pool,
            family: p.family,
            size: p.size,
            used: p.used,
            free: p.size.saturating_sub(p.used),
        })
        .collect()
}

/// The table for people.
pub fn render_table(plan: &Plan) -> String {
    let mut out = String::new();
    let rows: Vec<[String; 5]> = plan
        .results
        .iter()
        .map(|r| {
            [
                r.namespace.clone(),
                r.name.clone(),
                r.outcome.to_string(),
                if r.ips.is_empty() {
                    "-".into()
                } else {
                    r.ips.join(",")
                },
                r.error.clone().unwrap_or_default(),
            ]
        })
        .collect();
    table(
        &mut out,
        ["NAMESPACE", "NAME", "RESULT", "ADDRESSES", "REASON"],
        &rows,
    );
    for r in &plan.results {
        for w in &r.warnings {
            let _ = writeln!(out, "warning: {}/{}: {w}", r.namespace, r.name);
        }
    }
    out.push('\n');
    pools_table(&mut out, &plan.pools, &plan.config_errors);
    reserved_table(&mut out, &plan.reserved);
    out
}

/// The pool usage table and the configuration errors under it (`plan` and `status`).
pub fn pools_table(out: &mut String, pools: &[PoolUsage], config_errors: &[String]) {
    let rows: Vec<[String; 5]> = pools
        .iter()
        .map(|p| {
            [
                p.key.clone(),
                p.family.to_string(),
                p.size.to_string(),
                p.used.to_string(),
                p.free.to_string(),
            ]
        })
        .collect();
    table(out, ["POOL", "FAMILY", "SIZE", "USED", "FREE"], &rows);
    for e in config_errors {
        let _ = writeln!(out, "config error: {e}");
    }
}

pub fn table<const N: usize>(out: &mut String, header: [&str; N], rows: &[[String; N]]) {
    let mut widths = header.map(str::len);
    for row in rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.len());
        }
    }
    let mut line = |cells: &[&str]| {
        let text: Vec<String> = cells
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        let _ = writeln!(out, "{}", text.join("  ").trim_end());
    };
    line(&header);
    for row in rows {
        line(&row.each_ref().map(String::as_str));
    }
}
