//! `kube-vip-webhook status`: what an operator asks of a live cluster, read once, through the
//! same allocator the webhook uses: pools (size, used, free per family), Services waiting for an
//! address and why, pinned conflicts, the leader, certificate expiry.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::time::{Instant, SystemTime};

use serde::Serialize;

use crate::config::Config;
use crate::engine::{Options, Outcome};
use crate::live::{CertInfo, Snapshot};
use crate::plan::{PoolUsage, Reserved, pool_usage, pools_table, reserved, reserved_table, table};
use crate::reserved::Network;
use crate::state::{Allocator, Confirm, Request};

#[derive(Debug, Serialize)]
pub struct Report {
    /// `namespace/name` of the pool ConfigMap.
    pub configmap: String,
    pub configmap_present: bool,
    /// VIPPool objects read (they hand out addresses without the ConfigMap).
    pub vippools: usize,
    pub config_errors: Vec<String>,
    pub pools: Vec<PoolUsage>,
    /// Addresses never handed out, and why.
    pub reserved: Reserved,
    pub waiting: Vec<Waiting>,
    pub conflicts: Vec<Conflict>,
    /// Address entries on Services that do not parse (skipped when allocating).
    pub malformed_addresses: usize,
    pub leader: Option<Leader>,
    pub certificates: Vec<Certificate>,
}

#[derive(Debug, Serialize)]
pub struct Waiting {
    pub namespace: String,
    pub name: String,
    pub reason: String,
}

/// Two Services on one address with a clashing (port, protocol).
#[derive(Debug, Serialize, PartialEq, Eq, PartialOrd, Ord)]
pub struct Conflict {
    pub address: String,
    pub services: [String; 2],
}

#[derive(Debug, Serialize)]
pub struct Leader {
    /// Holder identity (pod name and process suffix); empty when released.
    pub holder: String,
    /// The leader's webhook address, for forwarding.
    pub address: Option<String>,
    /// When it last renewed (RFC 3339, the leader's clock).
    pub renewed: Option<String>,
    pub transitions: i32,
}

#[derive(Debug, Serialize)]
pub struct Certificate {
    #[serde(flatten)]
    pub cert: CertInfo,
    /// Whole days left (negative: expired).
    pub days_left: i64,
}

pub fn report(
    snapshot: &Snapshot,
    options: &Options,
    exclude: Option<crate::config::Exclusion>,
    configmap: &str,
    now: SystemTime,
) -> Report {
    let config = snapshot.config_data.as_ref().map(Config::from_data);
    let mut config_errors: Vec<String> = config
        .as_ref()
        .map(|c| c.errors().iter().map(ToString::to_string).collect())
        .unwrap_or_default();
    let network = Network {
        sources: snapshot.network.clone(),
        exclude,
    };
    let allocator =
        Allocator::new(options.clone(), Confirm::OnAdmit, configmap).with_network(&network);
    allocator.set_config(config);
    allocator.load_objects(&snapshot.objects);
    allocator.reset_services(&snapshot.services);

    config_errors.extend(crate::pools::PoolObjects::errors(&allocator.pools()));
    let mut waiting = Vec::new();
    let mut conflicts = BTreeSet::new();
    let decided_at = Instant::now();
    for svc in &snapshot.services {
        for (ip, other) in allocator.clashes_of(svc) {
            let me = svc.key().to_string();
            let pair = if me < other { [me, other] } else { [other, me] };
            conflicts.insert(Conflict {
                address: ip.to_string(),
                services: pair,
            });
        }
        if !allocator.needs_allocation(svc) {
            continue;
        }
        // What it would get now, holding nothing (each Service on its own).
        let d = allocator.admit(
            Request {
                id: "status",
                svc,
                old: None,
                dry_run: true,
            },
            decided_at,
        );
        let reason = match &d.outcome {
            Outcome::NoAddress(why) | Outcome::Denied(why) => why.clone(),
            Outcome::Allocated { ips, .. } => format!(
                "{} is free for it but it was not assigned yet: is the webhook (its leader) running? \
                 see its logs and `kubectl get events -n {}`",
                ips.iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(","),
                svc.namespace
            ),
            other => other.label().to_string(),
        };
        waiting.push(Waiting {
            namespace: svc.namespace.clone(),
            name: svc.name.clone(),
            reason,
        });
    }
    let leader = snapshot.lease.as_ref().map(|l| {
        let spec = l.spec.clone().unwrap_or_default();
        Leader {
            holder: spec.holder_identity.unwrap_or_default(),
            address: l
                .metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(crate::leadership::ADDRESS_ANNOTATION))
                .cloned(),
            renewed: spec.renew_time.map(|t| t.0.to_string()),
            transitions: spec.lease_transitions.unwrap_or(0),
        }
    });
    let certificates = snapshot
        .certs
        .iter()
        .map(|c| Certificate {
            cert: c.clone(),
            days_left: days_between(now, c.not_after),
        })
        .collect();
    Report {
        configmap: configmap.to_string(),
        configmap_present: snapshot.config_data.is_some(),
        vippools: snapshot.objects.pools.len(),
        config_errors,
        pools: pool_usage(&allocator),
        reserved: reserved(&allocator),
        waiting,
        conflicts: conflicts.into_iter().collect(),
        malformed_addresses: allocator.malformed_count(),
        leader,
        certificates,
    }
}

/// What a missing ConfigMap means: nothing at all is handed out only without pool objects.
fn missing_configmap(configmap: &str, vippools: usize) -> String {
    if vippools == 0 {
        format!(
            "ConfigMap {configmap} does not exist and there is no VIPPool: no address can be allocated"
        )
    } else {
        format!(
            "ConfigMap {configmap} does not exist: only the {vippools} VIPPools hand out addresses"
        )
    }
}

fn days_between(now: SystemTime, then: SystemTime) -> i64 {
    let secs = match then.duration_since(now) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX),
    };
    secs.div_euclid(86_400)
}

pub fn render_table(r: &Report) -> String {
    let mut out = String::new();
    if !r.configmap_present {
        let _ = writeln!(out, "{}\n", missing_configmap(&r.configmap, r.vippools));
    }
    pools_table(&mut out, &r.pools, &r.config_errors);
    reserved_table(&mut out, &r.reserved);
    out.push('\n');
    if r.waiting.is_empty() {
        out.push_str("No Service is waiting for an address.\n");
    } else {
        let rows: Vec<[String; 3]> = r
            .waiting
            .iter()
            .map(|w| [w.namespace.clone(), w.name.clone(), w.reason.clone()])
            .collect();
        let _ = writeln!(out, "Waiting for an address: {}", r.waiting.len());
        table(&mut out, ["NAMESPACE", "NAME", "WHY"], &rows);
    }
    for c in &r.conflicts {
        let _ = writeln!(
            out,
            "conflict: {} is used by {} and {} on a clashing port/protocol",
            c.address, c.services[0], c.services[1]
        );
    }
    if r.malformed_addresses > 0 {
        let _ = writeln!(
            out,
            "{} address entries on Services do not parse (ignored)",
            r.malformed_addresses
        );
    }
    out.push('\n');
    match &r.leader {
        Some(l) if !l.holder.is_empty() => {
            let _ = writeln!(
                out,
                "Leader: {} at {} (renewed {}, {} transitions)",
                l.holder,
                l.address.as_deref().unwrap_or("-"),
                l.renewed.as_deref().unwrap_or("never"),
                l.transitions
            );
        }
        Some(_) => out.push_str("Leader: none (the Lease is released)\n"),
        None => out.push_str("Leader: none (no Lease)\n"),
    }
    for c in &r.certificates {
        let _ = writeln!(
            out,
            "Certificate: {} expires in {} days",
            c.cert.source, c.days_left
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_missing_configmap_is_fatal_only_without_pool_objects() {
        assert!(
            missing_configmap("kube-system/kubevip", 0).contains("no address can be allocated")
        );
        let with_pools = missing_configmap("kube-system/kubevip", 2);
        assert!(with_pools.contains("only the 2 VIPPools"), "{with_pools}");
    }

    #[test]
    fn days_left_counts_whole_days_and_goes_negative() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(10 * 86_400);
        let day = Duration::from_secs(86_400);
        assert_eq!(
            days_between(now, now + 14 * day + Duration::from_secs(5)),
            14
        );
        assert_eq!(days_between(now, now - Duration::from_secs(1)), -1);
    }
}
