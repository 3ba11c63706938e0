//! The read-only commands: `plan` (files or a live cluster) and `status` (a live cluster).
//! Installed as `kubectl-vip` (a symlink), both also work as `kubectl vip plan|status`.

use std::path::PathBuf;
use std::time::SystemTime;

use anyhow::Context as _;
use clap::Args;

use super::{AllocationArgs, OutputFormat};
use crate::config::Config;
use crate::ipam::Family;
use crate::live::{self, Target};

/// Where the live cluster keeps the pool ConfigMap.
#[derive(Debug, Args)]
pub struct LiveArgs {
    /// Namespace of the pool ConfigMap.
    #[arg(long, env = "KUBEVIP_NAMESPACE", default_value = "kube-system")]
    pub kubevip_namespace: String,
    /// Name of the pool ConfigMap.
    #[arg(long, env = "KUBEVIP_CONFIG_MAP", default_value = "kubevip")]
    pub kubevip_config_map: String,
}

#[derive(Debug, Args)]
pub struct PlanArgs {
    /// The kubevip ConfigMap (YAML or JSON).
    #[arg(long, required_unless_present_any = ["live", "kubeconfig"], conflicts_with_all = ["live", "kubeconfig"])]
    pub configmap: Option<PathBuf>,
    /// Existing Services (the cluster): their addresses count as used. Repeatable.
    #[arg(long, conflicts_with_all = ["live", "kubeconfig"])]
    pub services: Vec<PathBuf>,
    /// Nodes (`kubectl get nodes -o yaml`), and optionally the default/kubernetes EndpointSlice
    /// and the kube-public/cluster-info ConfigMap: their addresses are never handed out.
    /// Repeatable.
    #[arg(long, conflicts_with_all = ["live", "kubeconfig"])]
    pub nodes: Vec<PathBuf>,
    /// Read the ConfigMap and every Service from this cluster instead of files.
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// Like --kubeconfig, with the usual credentials ($KUBECONFIG, ~/.kube/config, in-cluster).
    #[arg(long)]
    pub live: bool,
    #[command(flatten)]
    pub cluster: LiveArgs,
    /// New Services, decided in the order given. Without it: every handled LoadBalancer Service
    /// that has no address yet (what the reconciler would do). Repeatable.
    #[arg(long)]
    pub request: Vec<PathBuf>,
    /// VIPPool objects (YAML or JSON, e.g. `kubectl get vippools -o yaml`), tried before the
    /// ConfigMap's pools as in the cluster. Repeatable. (--live reads them from the cluster.)
    #[arg(long, conflicts_with_all = ["live", "kubeconfig"])]
    pub pools: Vec<PathBuf>,
    #[command(flatten)]
    pub allocation: AllocationArgs,
    #[arg(short = 'o', long = "output", value_enum, default_value = "table")]
    pub output: OutputFormat,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Kubeconfig of the cluster to read (default: $KUBECONFIG, ~/.kube/config, in-cluster).
    #[arg(long, env = "KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    #[command(flatten)]
    pub cluster: LiveArgs,
    /// Namespace the webhook runs in (its Lease and certificate Secrets).
    #[arg(long, env = "POD_NAMESPACE", default_value = "kube-system")]
    pub namespace: String,
    #[arg(long, default_value = "kube-vip-webhook")]
    pub lease_name: String,
    /// Secrets that may hold the serving certificate (the self-signed and cert-manager routes').
    #[arg(
        long,
        value_delimiter = ',',
        default_value = "kube-vip-webhook-selfsigned,kube-vip-webhook-tls"
    )]
    pub cert_secret: Vec<String>,
    #[arg(long, default_value = "kube-vip-webhook")]
    pub webhook_configuration: String,
    #[command(flatten)]
    pub allocation: AllocationArgs,
    #[arg(short = 'o', long = "output", value_enum, default_value = "table")]
    pub output: OutputFormat,
}

fn print<T: serde::Serialize>(
    output: OutputFormat,
    value: &T,
    table: impl FnOnce(&T) -> String,
) -> anyhow::Result<()> {
    match output {
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(value)?),
        OutputFormat::Table => print!("{}", table(value)),
    }
    Ok(())
}

/// The allocation options, with the primary family read from the cluster unless given.
async fn live_options(
    allocation: &AllocationArgs,
    client: &kube::Client,
) -> crate::engine::Options {
    let family = match allocation.default_ip_family {
        Some(f) => Family::from(f),
        None => live::primary_family(client).await,
    };
    allocation.options(family)
}

/// `plan`: print the plan; an unreadable input is the only error.
pub async fn run_plan(args: PlanArgs) -> anyhow::Result<()> {
    let plan = if args.live || args.kubeconfig.is_some() {
        let c = &args.cluster;
        let client = live::client(args.kubeconfig.as_deref()).await?;
        let target = Target {
            config_namespace: c.kubevip_namespace.clone(),
            config_name: c.kubevip_config_map.clone(),
            ..Target::default()
        };
        let snapshot = live::read(&client, &target).await?;
        let requests = if args.request.is_empty() {
            None
        } else {
            Some(crate::files::load_svc_infos(&args.request)?)
        };
        crate::plan::decide_all(
            snapshot.config_data.as_ref().map(Config::from_data),
            &format!("{}/{}", c.kubevip_namespace, c.kubevip_config_map),
            &snapshot.services,
            requests,
            &live_options(&args.allocation, &client).await,
            &crate::reserved::Network {
                sources: snapshot.network,
                exclude: args.allocation.exclusion()?,
            },
            &snapshot.objects,
        )
    } else {
        let configmap = args
            .configmap
            .context("--configmap FILE, or --kubeconfig FILE / --live")?;
        crate::plan::run(&crate::plan::PlanInput {
            configmap,
            services: args.services,
            requests: args.request,
            pools: args.pools,
            options: args.allocation.options(Family::V4),
            nodes: args.nodes,
            exclude: args.allocation.exclusion()?,
        })?
    };
    print(args.output, &plan, crate::plan::render_table)
}

/// `status`: read the live cluster once and report.
pub async fn run_status(args: StatusArgs) -> anyhow::Result<()> {
    let c = &args.cluster;
    let client = live::client(args.kubeconfig.as_deref()).await?;
    let target = Target {
        config_namespace: c.kubevip_namespace.clone(),
        config_name: c.kubevip_config_map.clone(),
        namespace: args.namespace.clone(),
        lease_name: args.lease_name.clone(),
        cert_secrets: args.cert_secret.clone(),
        webhook_configuration: args.webhook_configuration.clone(),
    };
    let snapshot = live::read(&client, &target).await?;
    let options = live_options(&args.allocation, &client).await;
    let report = crate::status::report(
        &snapshot,
        &options,
        args.allocation.exclusion()?,
        &format!("{}/{}", c.kubevip_namespace, c.kubevip_config_map),
        SystemTime::now(),
    );
    print(args.output, &report, crate::status::render_table)
}
