//! Cluster mode: state from the apiserver through watches, a reconciler as the fallback.
//!
//! One watch over all Services feeds both the used-address index (incrementally, so admission
//! never scans) and the reconciler; one watch over the pool ConfigMap re-parses it only when it
//! changes. The reconciler runs on the lease holder only; every replica answers admissions.

pub mod forward;
mod lease;
mod reconciler;
mod watches;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use clap::builder::BoolishValueParser;
use k8s_openapi::api::core::v1::Service;
use kube::Api;
use tokio_util::sync::CancellationToken;

use crate::admin::Readiness;
use crate::ipam::Family;
use crate::metrics::Metrics;
use crate::serve::{Running, ServeArgs, start_servers};
use crate::state::{Allocator, Confirm};

pub use lease::LeaderState;

#[derive(Debug, Clone, Args)]
pub struct ClusterArgs {
    /// Kubeconfig file (default: in-cluster config, then $KUBECONFIG, then ~/.kube/config).
    #[arg(long, env = "KUBECONFIG")]
    pub kubeconfig: Option<PathBuf>,
    /// Namespace of the pool ConfigMap.
    #[arg(long, env = "KUBEVIP_NAMESPACE", default_value = "kube-system")]
    pub kubevip_namespace: String,
    /// Name of the pool ConfigMap.
    #[arg(long, env = "KUBEVIP_CONFIG_MAP", default_value = "kubevip")]
    pub kubevip_config_map: String,
    /// How long an admitted address is held for a Service that has not shown up yet (1-3600:
    /// see `state::MIN_RESERVATION_TTL`, `state::MAX_RESERVATION_TTL`).
    #[arg(
        long,
        env = "KUBEVIP_WEBHOOK_RESERVATION_TTL_SECONDS",
        default_value_t = 30,
        value_parser = clap::value_parser!(u64).range(1..=3600)
    )]
    pub reservation_ttl_seconds: u64,
    /// Run the reconciler only while holding the Lease (for more than one replica).
    #[arg(long, env = "KUBEVIP_WEBHOOK_LEADER_ELECT", value_parser = BoolishValueParser::new(),
          default_value_t = true, num_args = 0..=1, default_missing_value = "true")]
    pub leader_elect: bool,
    /// Name of the Lease (in the pod's namespace).
    #[arg(
        long,
        env = "KUBEVIP_WEBHOOK_LEASE_NAME",
        default_value = "kube-vip-webhook"
    )]
    pub lease_name: String,
    /// Namespace this pod runs in (Lease, certificate Secret).
    #[arg(long, env = "POD_NAMESPACE", default_value = "kube-system")]
    pub pod_namespace: String,
    /// This pod's name (Lease holder identity, Event reporter instance).
    #[arg(long, env = "POD_NAME")]
    pub pod_name: Option<String>,
    /// This pod's IP, advertised in the Lease so other replicas forward admissions to the leader.
    #[arg(long, env = "POD_IP")]
    pub pod_ip: Option<std::net::IpAddr>,
    /// CA that signed the serving certificate (files route), to verify the leader when forwarding.
    /// The self-signed route knows its CA. Without either, followers admit without allocating.
    #[arg(long, env = "KUBEVIP_WEBHOOK_TLS_CA_FILE")]
    pub tls_ca_file: Option<PathBuf>,
    /// Self-signed route: keep a CA and serving certificate in --cert-secret and patch the
    /// caBundle of --webhook-configuration (instead of --tls-cert-file/--tls-key-file).
    #[arg(long, conflicts_with = "tls_cert_file")]
    pub self_signed: bool,
    #[arg(long, default_value = "kube-vip-webhook-selfsigned")]
    pub cert_secret: String,
    #[arg(long, default_value = "kube-vip-webhook")]
    pub webhook_configuration: String,
    /// Service in front of this webhook (the serving certificate is for <service>.<namespace>.svc).
    #[arg(long, default_value = "kube-vip-webhook")]
    pub service_name: String,
}

impl ClusterArgs {
    pub fn identity(&self) -> String {
        self.pod_name
            .clone()
            .or_else(|| std::env::var("HOSTNAME").ok())
            .unwrap_or_else(|| format!("kube-vip-webhook-{}", std::process::id()))
    }

    pub fn config_name(&self) -> String {
        format!("{}/{}", self.kubevip_namespace, self.kubevip_config_map)
    }
}

/// `serve` against a cluster, with a client from --kubeconfig or the environment.
pub async fn start(args: &ServeArgs, shutdown: CancellationToken) -> anyhow::Result<Running> {
    let client = match &args.cluster.kubeconfig {
        Some(path) => {
            let kubeconfig = kube::config::Kubeconfig::read_from(path)
                .with_context(|| format!("cannot read kubeconfig {}", path.display()))?;
            let config =
                kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default()).await?;
            kube::Client::try_from(config)?
        }
        None => kube::Client::try_default()
            .await
            .context("no cluster credentials (in-cluster config or kubeconfig)")?,
    };
    start_with_client(args, client, shutdown).await
}

/// Same as [`start`] with a given client (tests drive it against a fake apiserver).
pub async fn start_with_client(
    args: &ServeArgs,
    client: kube::Client,
    shutdown: CancellationToken,
) -> anyhow::Result<Running> {
    let cluster = &args.cluster;
    let primary = match args.allocation.default_ip_family {
        Some(f) => Family::from(f),
        None => primary_family(&client).await,
    };
    let options = args.allocation.options(primary);
    let ttl = Duration::from_secs(cluster.reservation_ttl_seconds.max(1));
    let allocator = Arc::new(
        Allocator::new(options, Confirm::ByCache { ttl }, cluster.config_name())
            .with_quotas(args.quotas()),
    );

    let (tls, ca_pem) = match (&args.tls_cert_file, &args.tls_key_file, cluster.self_signed) {
        (Some(cert), Some(key), _) => {
            let ca = match &cluster.tls_ca_file {
                Some(p) => {
                    Some(std::fs::read(p).with_context(|| format!("cannot read {}", p.display()))?)
                }
                None => None,
            };
            (crate::tls::reloading_server_config(cert, key)?, ca)
        }
        (_, _, true) => {
            let boot = crate::bootstrap::ensure_with(
                &client,
                crate::bootstrap::BootstrapConfig::from_args(cluster),
                shutdown.clone(),
            )
            .await?;
            let ca = boot.status.borrow().ca_bundle.clone();
            (boot.server_config, Some(ca))
        }
        _ => {
            anyhow::bail!("cluster mode needs --tls-cert-file and --tls-key-file, or --self-signed")
        }
    };
    let readiness = Readiness::default();
    let metrics = Arc::new(Metrics::new(allocator.clone()));
    let leader = LeaderState::new(!cluster.leader_elect);
    let forward = match (cluster.leader_elect, ca_pem) {
        (true, Some(ca)) => Some(Arc::new(forward::Forwarder::new(
            leader.clone(),
            ca,
            format!("{}.{}.svc", cluster.service_name, cluster.pod_namespace),
        ))),
        (true, None) => {
            tracing::warn!(
                "leader election without a CA to verify the leader (--tls-ca-file): followers admit \
                 without allocating and the leader's reconciler assigns addresses"
            );
            Some(Arc::new(forward::Forwarder::new(
                leader.clone(),
                Vec::new(),
                String::new(),
            )))
        }
        (false, _) => None,
    };
    let mut running = start_servers(
        args,
        allocator.clone(),
        metrics.clone(),
        forward,
        tls,
        readiness.clone(),
        None,
        shutdown.clone(),
    )?;

    if cluster.leader_elect {
        let port = running.webhook_addr.port();
        let lease = lease::LeaseConfig {
            namespace: cluster.pod_namespace.clone(),
            name: cluster.lease_name.clone(),
            identity: cluster.identity(),
            advertise: cluster
                .pod_ip
                .map(|ip| std::net::SocketAddr::new(ip, port).to_string()),
            ..lease::LeaseConfig::default()
        };
        running.spawn(lease::run(
            client.clone(),
            lease,
            leader.clone(),
            shutdown.clone(),
        ));
    }
    let ctx = Arc::new(reconciler::Context::new(
        client.clone(),
        allocator.clone(),
        metrics,
        leader,
        cluster.identity(),
    ));
    let synced = watches::Synced::new(readiness, shutdown.clone());
    running.spawn(watches::config_watch(
        client.clone(),
        cluster.clone(),
        ctx.clone(),
        synced.clone(),
    ));
    running.spawn(reconciler::run(client, ctx, synced, shutdown.clone()));
    let (alloc, token) = (allocator, shutdown);
    running.spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = token.cancelled() => return Ok(()),
                _ = tick.tick() => alloc.expire(std::time::Instant::now()),
            }
        }
    });
    Ok(running)
}

/// The cluster's primary family: the first family of the `default/kubernetes` Service.
async fn primary_family(client: &kube::Client) -> Family {
    let api: Api<Service> = Api::namespaced(client.clone(), "default");
    match api.get("kubernetes").await {
        Ok(svc) => svc
            .spec
            .and_then(|s| s.ip_families)
            .and_then(|f| f.first().and_then(|f| Family::from_k8s(f)))
            .unwrap_or(Family::V4),
        Err(e) => {
            tracing::warn!(error = %e, "cannot read default/kubernetes to learn the primary IP family; assuming IPv4 (set --default-ip-family)");
            Family::V4
        }
    }
}
