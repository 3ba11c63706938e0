//! Command line: `serve` and `plan`. Flags have environment fallbacks where the peer had them.
//! Arguments are parsed and checked here; the rest of the crate gets plain settings.

mod inspect;
mod serve;

use clap::builder::BoolishValueParser;
use clap::{Args, Parser, Subcommand, ValueEnum};

pub use inspect::{PlanArgs, StatusArgs};
pub use serve::{ClusterArgs, ServeArgs, start};

use crate::config::Exclusion;
use crate::engine::{ClassMode, DEFAULT_CLASS, Options};
use crate::ipam::Family;

#[derive(Debug, Parser)]
#[command(
    name = "kube-vip-webhook",
    version,
    about = "Admission-time LoadBalancer addresses for kube-vip"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the HTTPS admission webhook, the reconciler and the admin port.
    Serve(Box<ServeArgs>),
    /// What each Service would get, from files (offline) or from a live cluster (--kubeconfig).
    Plan(PlanArgs),
    /// A live cluster, read once: pools, Services waiting and why, conflicts, leader, certificates.
    Status(StatusArgs),
}

/// Which Services are ours and how addresses are written; shared by `serve` and `plan`.
#[derive(Debug, Clone, Args)]
pub struct AllocationArgs {
    /// Handle only Services of `--loadbalancer-class` (instead of class-less ones).
    #[arg(long, env = "KUBEVIP_ENABLE_LOADBALANCERCLASS", value_parser = BoolishValueParser::new(),
          default_value_t = false, num_args = 0..=1, default_missing_value = "true")]
    pub enable_loadbalancer_class: bool,
    /// The class handled in class mode.
    #[arg(long, env = "KUBEVIP_CUSTOM_LOADBALANCERCLASS_NAME", default_value = DEFAULT_CLASS)]
    pub loadbalancer_class: String,
    /// Primary IP family of the cluster, for Services whose ipFamilies is not set yet (CREATE).
    /// In `serve` it is read from the `default/kubernetes` Service unless given.
    #[arg(long, value_enum)]
    pub default_ip_family: Option<IpFamilyArg>,
    /// Also write the deprecated spec.loadBalancerIP (for data planes that do not read the annotation).
    #[arg(long, env = "KUBEVIP_WRITE_LOADBALANCER_IP", value_parser = BoolishValueParser::new(),
          default_value_t = false, num_args = 0..=1, default_missing_value = "true")]
    pub write_load_balancer_ip: bool,
    /// Addresses never handed out, in every namespace, whatever the pools say (gateways,
    /// addresses outside Kubernetes): CIDRs, `a-b` ranges or single addresses, comma-separated,
    /// IPv4 and IPv6. Repeatable. Added to the ConfigMap's `exclude-*` keys.
    #[arg(long, env = "KUBEVIP_WEBHOOK_EXCLUDE")]
    pub exclude: Vec<String>,
}

impl AllocationArgs {
    /// The `--exclude` addresses; a bad entry is an error (a flag is fixed at start: better to
    /// refuse to start than to hand out an address the operator meant to keep).
    pub fn exclusion(&self) -> anyhow::Result<Option<Exclusion>> {
        let (exclusion, bad) = Exclusion::parse("--exclude", &self.exclude.join(","));
        if let Some((entry, reason)) = bad.first() {
            anyhow::bail!("--exclude: entry {entry:?}: {reason}");
        }
        Ok((!exclusion.is_empty()).then_some(exclusion))
    }

    pub fn options(&self, default_family: Family) -> Options {
        Options {
            class_mode: if self.enable_loadbalancer_class {
                ClassMode::Class(self.loadbalancer_class.clone())
            } else {
                ClassMode::Classless
            },
            default_family: self
                .default_ip_family
                .map(Family::from)
                .unwrap_or(default_family),
            write_spec_load_balancer_ip: self.write_load_balancer_ip,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum IpFamilyArg {
    #[value(name = "IPv4", alias = "ipv4")]
    IPv4,
    #[value(name = "IPv6", alias = "ipv6")]
    IPv6,
}

impl From<IpFamilyArg> for Family {
    fn from(f: IpFamilyArg) -> Family {
        match f {
            IpFamilyArg::IPv4 => Family::V4,
            IpFamilyArg::IPv6 => Family::V6,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    Table,
    Json,
}

/// Run the parsed command (`main` only installs the TLS provider and parses).
pub fn run(cli: Cli) -> anyhow::Result<()> {
    let runtime = || {
        tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
    };
    match cli.command {
        Command::Plan(args) => runtime()?.block_on(inspect::run_plan(args)),
        Command::Status(args) => runtime()?.block_on(inspect::run_status(args)),
        Command::Serve(args) => runtime()?.block_on(serve::run(*args)),
    }
}
