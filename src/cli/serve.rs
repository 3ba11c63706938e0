//! `serve` flags, checked and turned into [`crate::serve::Settings`] / [`crate::cluster::Settings`].

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::Args;
use clap::builder::BoolishValueParser;

use super::AllocationArgs;
use crate::bootstrap::{BootstrapConfig, service_dns_names};
use crate::cluster::{self, Certs, LeaseSettings};
use crate::ipam::Family;
use crate::serve::{self, Standalone, Stop};

/// Longest reservation TTL, shutdown delay or lease timing accepted: an hour is far beyond any
/// sensible value and keeps every `Instant + duration` far from overflowing.
const MAX_SECONDS: u64 = 3600;

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// HTTPS address of the webhook.
    #[arg(long, env = "KUBEVIP_WEBHOOK_LISTEN", default_value = "0.0.0.0:8443")]
    pub listen: SocketAddr,
    /// Plain-HTTP admin address (/livez, /readyz, /metrics).
    #[arg(
        long,
        env = "KUBEVIP_WEBHOOK_ADMIN_LISTEN",
        default_value = "0.0.0.0:8080"
    )]
    pub admin_listen: SocketAddr,
    /// Serving certificate (PEM); new connections pick up a replaced file without a restart.
    #[arg(long, env = "KUBEVIP_WEBHOOK_TLS_CERT_FILE", requires = "tls_key_file")]
    pub tls_cert_file: Option<PathBuf>,
    /// Serving private key (PEM).
    #[arg(long, env = "KUBEVIP_WEBHOOK_TLS_KEY_FILE", requires = "tls_cert_file")]
    pub tls_key_file: Option<PathBuf>,
    /// After SIGTERM, keep serving this long with /readyz false before draining (endpoints take
    /// a moment to drop the pod; a preStop sleep would need Kubernetes 1.30).
    #[arg(long, env = "KUBEVIP_WEBHOOK_SHUTDOWN_DELAY_SECONDS", default_value_t = 5,
          value_parser = clap::value_parser!(u64).range(0..=MAX_SECONDS))]
    pub shutdown_delay_seconds: u64,
    /// Require a client certificate signed by this CA (PEM) on the webhook port: only the
    /// apiserver, given a client certificate through its AdmissionConfiguration, can call it.
    /// Reloaded when the file changes.
    #[arg(long, env = "KUBEVIP_WEBHOOK_CLIENT_CA_FILE")]
    pub client_ca_file: Option<PathBuf>,
    /// With --client-ca-file: the client certificate's Common Name (or a DNS SAN) must be one
    /// of these (comma-separated). Default: any certificate from the CA.
    #[arg(
        long,
        env = "KUBEVIP_WEBHOOK_CLIENT_ALLOWED_NAMES",
        requires = "client_ca_file",
        value_delimiter = ','
    )]
    pub client_allowed_names: Vec<String>,
    /// Most addresses held at once for admissions whose Service has not shown up yet, over all
    /// namespaces (standalone: Services admitted). At the limit, new Services are admitted
    /// without an address (the reconciler assigns one) and new requested addresses are denied.
    #[arg(long, env = "KUBEVIP_WEBHOOK_MAX_RESERVATIONS",
          default_value_t = crate::state::DEFAULT_MAX_RESERVATIONS as u32,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_reservations: u32,
    /// The same per namespace, so that one namespace cannot take them all.
    #[arg(long, env = "KUBEVIP_WEBHOOK_MAX_RESERVATIONS_PER_NAMESPACE",
          default_value_t = crate::state::DEFAULT_MAX_RESERVATIONS_PER_NAMESPACE as u32,
          value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub max_reservations_per_namespace: u32,
    /// Run without a cluster: pools from --configmap, used addresses from --services plus what
    /// this process hands out. Without TLS files a self-signed certificate is generated.
    #[arg(long)]
    pub standalone: bool,
    /// With --standalone: the kubevip ConfigMap file (YAML or JSON).
    #[arg(long, requires = "standalone")]
    pub configmap: Option<PathBuf>,
    /// With --standalone: existing Services (their addresses count as used). Repeatable.
    #[arg(long, requires = "standalone")]
    pub services: Vec<PathBuf>,
    /// With --standalone: VIPPool objects (YAML or JSON), tried before the ConfigMap's pools.
    /// Repeatable.
    #[arg(long, requires = "standalone")]
    pub pools: Vec<PathBuf>,
    /// With --standalone and no TLS files: where the generated certificate goes (created 0700
    /// if missing; refused if a symlink or writable by others). Default: a new private
    /// directory under the system temp dir.
    #[arg(long, requires = "standalone")]
    pub cert_dir: Option<PathBuf>,
    #[command(flatten)]
    pub allocation: AllocationArgs,
    #[command(flatten)]
    pub cluster: ClusterArgs,
}

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
    /// How long an admitted address is held for a Service that has not shown up yet: the bound
    /// on the admission pipeline after our answer (other webhooks, the etcd write, watch lag).
    #[arg(long, env = "KUBEVIP_WEBHOOK_RESERVATION_TTL_SECONDS", default_value_t = 30,
          value_parser = clap::value_parser!(u64).range(1..=MAX_SECONDS))]
    pub reservation_ttl_seconds: u64,
    /// Allocate only while holding the Lease (required with more than one replica).
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
    /// How long the other replicas wait, from the last renewal they saw, before taking over.
    #[arg(long, default_value_t = 15, value_parser = clap::value_parser!(u64).range(2..=MAX_SECONDS))]
    pub lease_duration_seconds: u64,
    /// How long after its last successful renewal the leader may still allocate (shorter than
    /// the lease duration: the margin covers clock rate differences).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=MAX_SECONDS))]
    pub renew_deadline_seconds: u64,
    /// How often the leader renews and the others look.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..=MAX_SECONDS))]
    pub retry_period_seconds: u64,
    /// A new leader allocates only this long after the previous leader's last possible
    /// allocation (its answers must reach the cache first). The default adds no wait after an
    /// expired lease (lease duration - renew deadline already covers it); after a graceful
    /// release it is the whole wait.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(0..=MAX_SECONDS))]
    pub takeover_grace_seconds: u64,
    /// Namespace this pod runs in (Lease, certificate Secret).
    #[arg(long, env = "POD_NAMESPACE", default_value = "kube-system")]
    pub pod_namespace: String,
    /// This pod's name (Lease holder identity with a per-process suffix, Event reporter).
    #[arg(long, env = "POD_NAME")]
    pub pod_name: Option<String>,
    /// This pod's IP, advertised in the Lease so other replicas forward admissions to the leader.
    #[arg(long, env = "POD_IP")]
    pub pod_ip: Option<IpAddr>,
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
    /// Self-signed route: more names (DNS names or IP addresses) for the serving certificate,
    /// e.g. when the webhook is registered by URL. Comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub cert_extra_names: Vec<String>,
}

fn secs(s: u64) -> Duration {
    Duration::from_secs(s)
}

impl ServeArgs {
    fn serve_settings(&self) -> anyhow::Result<serve::Settings> {
        Ok(serve::Settings {
            listen: self.listen,
            admin_listen: self.admin_listen,
            options: self.allocation.options(Family::V4),
            shutdown_delay: secs(self.shutdown_delay_seconds),
            client_auth: self
                .client_ca_file
                .as_ref()
                .map(|ca_file| crate::tls::ClientAuth {
                    ca_file: ca_file.clone(),
                    allowed_names: self.client_allowed_names.clone(),
                }),
            quotas: crate::state::Quotas {
                reservations: self.max_reservations as usize,
                per_namespace: self.max_reservations_per_namespace as usize,
                ..crate::state::Quotas::default()
            },
            exclude: self.allocation.exclusion()?,
        })
    }

    /// Standalone settings (`--standalone`).
    pub fn standalone(&self) -> anyhow::Result<Standalone> {
        let configmap = self.configmap.clone().context(
            "--standalone needs --configmap FILE (try manifest/examples/kubevip-configmap.yaml)",
        )?;
        Ok(Standalone {
            configmap,
            services: self.services.clone(),
            pools: self.pools.clone(),
            tls_files: self.tls_cert_file.clone().zip(self.tls_key_file.clone()),
            cert_dir: self.cert_dir.clone(),
        })
    }

    /// Cluster-mode settings; fails on inconsistent flags.
    pub fn cluster_settings(&self) -> anyhow::Result<cluster::Settings> {
        let c = &self.cluster;
        let certs = match (&self.tls_cert_file, &self.tls_key_file, c.self_signed) {
            (Some(cert), Some(key), _) => Certs::Files {
                cert: cert.clone(),
                key: key.clone(),
                ca: c.tls_ca_file.clone(),
            },
            (_, _, true) => {
                let mut dns_names = service_dns_names(&c.service_name, &c.pod_namespace);
                dns_names.extend(c.cert_extra_names.iter().map(|n| n.trim().to_string()));
                Certs::SelfSigned(BootstrapConfig::new(
                    c.pod_namespace.clone(),
                    c.cert_secret.clone(),
                    c.webhook_configuration.clone(),
                    dns_names,
                ))
            }
            _ => bail!("cluster mode needs --tls-cert-file and --tls-key-file, or --self-signed"),
        };
        let identity = identity(c.pod_name.as_deref());
        let election = if c.leader_elect {
            let (lease, renew, retry) = (
                c.lease_duration_seconds,
                c.renew_deadline_seconds,
                c.retry_period_seconds,
            );
            if !(retry < renew && renew < lease) {
                bail!(
                    "leader election needs --retry-period-seconds ({retry}) < --renew-deadline-seconds \
                     ({renew}) < --lease-duration-seconds ({lease})"
                );
            }
            Some(LeaseSettings {
                namespace: c.pod_namespace.clone(),
                name: c.lease_name.clone(),
                identity: identity.clone(),
                lease_duration: secs(lease),
                renew_deadline: secs(renew),
                retry_period: secs(retry),
                takeover_grace: secs(c.takeover_grace_seconds),
                advertise: None,
            })
        } else {
            None
        };
        Ok(cluster::Settings {
            serve: self.serve_settings()?,
            default_family: self.allocation.default_ip_family.map(Family::from),
            kubeconfig: c.kubeconfig.clone(),
            config_namespace: c.kubevip_namespace.clone(),
            config_name: c.kubevip_config_map.clone(),
            reservation_ttl: secs(c.reservation_ttl_seconds),
            election,
            identity,
            pod_ip: c.pod_ip,
            certs,
            forward_server_name: format!("{}.{}.svc", c.service_name, c.pod_namespace),
        })
    }
}

/// Pod name plus a per-process nonce: a restarted pod (same name) is a new candidate that must
/// wait out the old term instead of resuming it.
fn identity(pod_name: Option<&str>) -> String {
    let base = pod_name
        .map(str::to_string)
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "kube-vip-webhook".into());
    let mut nonce = [0u8; 4];
    let random = rustls::crypto::ring::default_provider().secure_random;
    if random.fill(&mut nonce).is_err() {
        // Unique enough per process without randomness: the pid and the start time.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or_default();
        nonce = (std::process::id() ^ t).to_be_bytes();
    }
    let hex: String = nonce.iter().map(|b| format!("{b:02x}")).collect();
    format!("{base}_{hex}")
}

/// `serve`: start the chosen mode and run until stopped.
pub async fn run(args: ServeArgs) -> anyhow::Result<()> {
    serve::init_logging();
    let stop = Stop::default();
    stop.on_signal(secs(args.shutdown_delay_seconds));
    let running = start(&args, stop).await?;
    tracing::info!(webhook = %running.webhook_addr, admin = %running.admin_addr, "serving");
    running.wait().await
}

/// Start `serve` as `args` configure it (standalone or cluster), without signal handling:
/// what `run` does, for embedding and tests.
pub async fn start(args: &ServeArgs, stop: Stop) -> anyhow::Result<crate::serve::Running> {
    if args.standalone {
        serve::start_standalone(&args.serve_settings()?, &args.standalone()?, stop).await
    } else {
        cluster::start(args.cluster_settings()?, stop).await
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::super::{Cli, Command};

    fn settings(election: &[&str]) -> anyhow::Result<crate::cluster::Settings> {
        let mut argv = vec![
            "kube-vip-webhook",
            "serve",
            "--tls-cert-file",
            "c",
            "--tls-key-file",
            "k",
        ];
        argv.extend_from_slice(election);
        match Cli::try_parse_from(argv)?.command {
            Command::Serve(args) => args.cluster_settings(),
            _ => unreachable!("parsed serve"),
        }
    }

    /// Fencing needs retry < renew deadline < lease duration: a renew deadline at or past the
    /// lease would let the old leader allocate after another replica took the Lease.
    #[test]
    fn election_timing_must_be_ordered() {
        let timing = |lease: &str, renew: &str, retry: &str| {
            settings(&[
                "--lease-duration-seconds",
                lease,
                "--renew-deadline-seconds",
                renew,
                "--retry-period-seconds",
                retry,
            ])
        };
        assert!(timing("15", "10", "2").is_ok());
        for (lease, renew, retry) in [("10", "10", "2"), ("15", "20", "2"), ("15", "10", "10")] {
            let err = timing(lease, renew, retry).err().map(|e| e.to_string());
            assert!(
                err.as_deref()
                    .is_some_and(|e| e.contains("--retry-period-seconds")),
                "{lease}/{renew}/{retry}: {err:?}"
            );
        }
        // Without election the timing is not used, so not checked.
        assert!(settings(&["--leader-elect=false", "--renew-deadline-seconds", "20"]).is_ok());
    }
}
